"""A web page and a curl-friendly JSON endpoint in front of Triton (extra ``ui``).

The app talks to Triton only through the thin client and holds no model; see docs/ui.md.
"""
