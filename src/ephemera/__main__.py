from ephemera.cli import main

main()
