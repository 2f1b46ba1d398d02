from mcompress.cli.main import main

main()
