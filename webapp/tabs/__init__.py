"""The studio's tabs, one module each; `webapp.app.build_app` puts them together."""
