"""``orchwf dashboard``: a small web UI over the orchwf tables (server-side HTML, stdlib HTTP).

server.py routes and guards requests, pages.py renders HTML, dag_svg.py draws step graphs,
queries.py holds the SQL; static/ has the one stylesheet and the one script.
"""
