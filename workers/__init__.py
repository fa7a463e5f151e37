"""The Celery side of tunectl: the app and its thin step tasks."""
