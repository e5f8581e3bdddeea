"""The web console (issue 19): a browser UI served by the gateway itself at ``/``.

:mod:`gateway.web.sessions` keeps the signed-in sessions, :mod:`gateway.web.console` serves
the static files and the sign-in/sign-out routes and lets a session cookie stand for the
bearer token on the JSON API. The pages themselves are plain HTML/CSS/JS in ``static/``
(packaged in the wheel; no build step, no CDN, so it works on a substation LAN).
"""
