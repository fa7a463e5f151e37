"""tunectl's HTTP API: the app (app.py) and its routers."""
