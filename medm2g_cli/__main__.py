from medm2g_cli.main import main

main()
