from lightning_echo.cli import main

main()
