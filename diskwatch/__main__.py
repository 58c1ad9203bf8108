from diskwatch.cli import main

main()
