"""Deployment: export to other formats, the HTTP server and its page, and Grad-CAM."""
