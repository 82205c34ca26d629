from autotts.cli import main

main()
