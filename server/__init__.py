"""The multi-tenant rule server; built in issue 4.

A placeholder package so that the layout of the design (and the wheel) already has its place.
The server will use only emirax's public API; emirax never imports server.
"""
