"""The web console (issue 19): a browser UI served by the gateway itself at ``/``.

:mod:`gateway.web.sessions` keeps the signed-in sessions, :mod:`gateway.web.console` serves
the static files and the sign-in/sign-out routes and lets a session cookie stand for the
bearer token on the JSON API. The pages themselves are plain HTML/CSS/JS in ``static/``
(packaged in the wheel; no build step, no CDN, so it works on a substation LAN).

The charts (the meter page's load curve and interval bars) are plain inline SVG drawn by
``static/console.js``, not a chart library: a line and bars over at most a day of points
need some fifty lines of code, a vendored library would be code to audit, update and license
for that, and SVG elements can carry each data point's time and value as attributes, which
the browser test compares with the API. Large ranges (a year of 15-minute data) will need
downsampling on the server first, whatever draws them.
"""
