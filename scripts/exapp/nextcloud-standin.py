#!/usr/bin/env python3
"""A minimal stand-in Nextcloud for measuring ycord in ExApp mode (not a test fixture: the
tests use tests/common/nextcloud.rs). Every user may write every file; each WebDAV SEARCH is
counted, and GET /count answers how many arrived. Usage: nextcloud-standin.py PORT"""
import re
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

searches = 0


class Handler(BaseHTTPRequestHandler):
    def do_SEARCH(self):
        global searches
        body = self.rfile.read(int(self.headers.get("content-length", 0))).decode()
        searches += 1
        file_id = re.search(r"<d:literal>(\d+)</d:literal>", body).group(1)
        answer = (
            '<?xml version="1.0"?>\n<d:multistatus xmlns:d="DAV:" xmlns:oc="http://owncloud.org/ns">'
            f"<d:response><d:href>/remote.php/dav/files/u/f{file_id}</d:href><d:propstat><d:prop>"
            f"<oc:fileid>{file_id}</oc:fileid><oc:permissions>RGDNVW</oc:permissions></d:prop>"
            "<d:status>HTTP/1.1 200 OK</d:status></d:propstat></d:response></d:multistatus>"
        ).encode()
        self.send_response(207)
        self.send_header("content-type", "application/xml; charset=utf-8")
        self.send_header("content-length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def do_GET(self):
        answer = str(searches).encode()
        self.send_response(200)
        self.send_header("content-length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, *args):
        pass


class Server(ThreadingHTTPServer):
    request_queue_size = 1024


Server(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
