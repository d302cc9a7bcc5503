"""The gateway's built-in dashboard: static pages under `/ui/`, drawn from the admin API.

`cortex.ui.routes.install(app, gateway)` adds the routes; the page itself
(`static/`) is plain HTML, CSS and JavaScript, with no framework and nothing
fetched from outside the gateway.
"""
