"""Packaged Hydra configs of lightning_echo (installed as lightning_echo.conf)."""
