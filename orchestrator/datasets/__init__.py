"""Datasets: checks run before anything is uploaded."""
