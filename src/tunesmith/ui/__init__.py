"""`tunesmith ui`: the web app over the registry and the review queues (pages, API views, static assets)."""
