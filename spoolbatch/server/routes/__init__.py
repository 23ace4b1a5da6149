"""The API's routers, one per resource: files, batches, the replaced server's routes, health and the page."""
