"""The OpenAPI 3 document of the staging API (served at /api/v1/openapi.json).

Kept by hand next to the handlers; tests/staging/test_schemathesis.py checks
the running service against it (no 500, every answer matches its schema).
"""

from __future__ import annotations

import copy
from typing import Any

_NSTR = {"type": "string", "nullable": True}
_NINT = {"type": "integer", "nullable": True}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str = "OK") -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _err(description: str) -> dict[str, Any]:
    return _json(_ref("Error"), description)


_LINK = {"Link": {"description": "next page: <URL>; rel=\"next\"",
                  "schema": {"type": "string"}}}

SCHEMAS: dict[str, Any] = {
    "Error": {
        "type": "object", "required": ["error"],
        "properties": {"error": {
            "type": "object", "required": ["code", "message"],
            "properties": {"code": {"type": "string"}, "message": {"type": "string"}}}}},
    "Location": {
        "type": "object", "required": ["name", "type"],
        "properties": {"name": {"type": "string"}, "host": _NSTR, "port": _NINT,
                       "type": _NSTR, "mount": _NSTR}},
    "LocationEntry": {
        "type": "object",
        "required": ["filename", "basename", "lastmod", "size", "type", "mime", "site", "path",
                     "url", "location"],
        "properties": {
            "filename": {"type": "string", "description": "site-relative path"},
            "basename": {"type": "string"},
            "lastmod": {"type": "string", "nullable": True, "description": "RFC 1123"},
            "size": {"type": "integer"},
            "type": {"type": "string", "enum": ["file", "directory"]},
            "mime": {"type": "string"},
            "site": {"type": "string"},
            "path": {"type": "string", "description": "SITE:/PATH"},
            "url": {"type": "string", "description": "WebDAV URL"},
            "checksum": {"type": "object", "nullable": True,
                         "additionalProperties": {"type": "string"}},
            "stale": {"type": "boolean",
                      "description": "the site could not be crawled lately"},
            "location": _ref("Location")}},
    "Webhook": {
        "oneOf": [
            {"type": "string", "format": "uri"},
            {"type": "object", "required": ["url"], "additionalProperties": False,
             "properties": {
                 "url": {"type": "string", "format": "uri"},
                 "method": {"type": "string", "enum": ["POST", "PUT", "PATCH"]},
                 "headers": {"type": "object",
                             "additionalProperties": {"type": "string"}}}}]},
    "CopyRequest": {
        "type": "object", "required": ["from", "to"], "additionalProperties": False,
        "properties": {
            "id": {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}$"},
            "from": {"type": "string", "description": "SITE:/PATH", "example":
                     "site-a:/UC1/data.bin"},
            "to": {"type": "string", "description": "SITE:/PATH", "example":
                   "site-b:/UC1/data.bin"},
            "webhook": _ref("Webhook"),
            "move": {"type": "boolean", "default": False},
            "overwrite": {"type": "boolean", "default": True},
            "recursive": {"type": "boolean", "default": False},
            "checksum": {"oneOf": [
                {"type": "string", "enum": ["sha256", "sha1", "md5", "none"]},
                {"type": "object", "minProperties": 1, "maxProperties": 1,
                 "additionalProperties": {"type": "string"}}]}}},
    "CopyAccepted": {
        "type": "object", "required": ["id", "status", "status_url"],
        "properties": {"id": {"type": "string"}, "status": _ref("JobStatusName"),
                       "status_url": {"type": "string"}}},
    "JobStatusName": {"type": "string",
                      "enum": ["queued", "running", "succeeded", "failed", "cancelled"]},
    "Delivery": {
        "type": "object", "required": ["attempt", "at", "status_code", "error"],
        "properties": {"attempt": {"type": "integer"}, "at": {"type": "string"},
                       "status_code": _NINT, "error": _NSTR,
                       "duration_ms": {"type": "integer"}}},
    "JobError": {
        "type": "object", "nullable": True, "required": ["code", "message"],
        "properties": {"code": {"type": "string"}, "message": {"type": "string"},
                       "status": {"type": "integer"}}},
    "Job": {
        "type": "object",
        "required": ["id", "status", "from", "to", "created_at", "started_at", "finished_at",
                     "bytes_total", "bytes_done", "files_total", "files_done", "rate_bps",
                     "attempts", "checksum", "error", "webhook"],
        "properties": {
            "id": {"type": "string"}, "status": _ref("JobStatusName"),
            "from": {"type": "string"}, "to": {"type": "string"},
            "move": {"type": "boolean"}, "overwrite": {"type": "boolean"},
            "recursive": {"type": "boolean"},
            "created_at": {"type": "string"}, "started_at": _NSTR, "finished_at": _NSTR,
            "bytes_total": _NINT, "bytes_done": {"type": "integer"},
            "files_total": _NINT, "files_done": {"type": "integer"},
            "rate_bps": _NINT, "attempts": {"type": "integer"},
            "checksum": {"type": "object", "nullable": True,
                         "additionalProperties": {"type": "string"}},
            "error": _ref("JobError"),
            "cancel_requested": {"type": "boolean"},
            "status_url": {"type": "string"},
            "webhook": {"type": "object", "nullable": True, "required": ["url", "deliveries"],
                        "properties": {"url": {"type": "string"},
                                       "method": {"type": "string"},
                                       "state": _NSTR,
                                       "deliveries": {"type": "array",
                                                      "items": _ref("Delivery")}}}}},
    "Service": {
        "type": "object", "required": ["type"],
        "properties": {"type": {"type": "string"}, "name": {"type": "string"},
                       "ports": {"type": "array", "items": {"type": "integer"}},
                       "host": {"type": "string"}, "header": {"type": "string"},
                       "status": {"type": "string"}, "message": {"type": "string"}}},
}

_AUTH: list[dict[str, list[str]]] = [{"basic": []}, {"bearer": []}, {"accessToken": []}]
_PROTECTED_ERRORS = {"400": _err("bad request"), "401": _err("authentication required"),
                     "403": _err("permission denied")}


def _protected(op: dict[str, Any], *codes: str) -> dict[str, Any]:
    op = copy.deepcopy(op)
    op["security"] = _AUTH
    op["responses"].update(copy.deepcopy(_PROTECTED_ERRORS))
    for c in codes:
        op["responses"][c] = _err({"404": "not found", "409": "conflict",
                                   "413": "body too large", "422": "unprocessable",
                                   "405": "method not allowed"}[c])
    return op


_LIMIT = {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1,
                                                      "maximum": 10000}}
_CURSOR = {"name": "cursor", "in": "query", "schema": {"type": "string"}}

PATHS: dict[str, Any] = {
    "/healthz": {"get": {"summary": "liveness", "operationId": "healthz",
                         "responses": {"200": _json({"type": "object"})}}},
    "/readyz": {"get": {"summary": "readiness: state store and sites", "operationId": "readyz",
                        "responses": {"200": _json({"type": "object"}),
                                      "503": _json({"type": "object"}, "not ready")}}},
    "/metrics": {"get": {"summary": "Prometheus metrics", "operationId": "metrics",
                         "responses": {"200": {"description": "Prometheus text format",
                                               "content": {"text/plain": {
                                                   "schema": {"type": "string"}}}}}}},
    "/api/v1/openapi.json": {"get": {"summary": "this document", "operationId": "openapi",
                                     "responses": {"200": _json({"type": "object"})}}},
    "/api/v1/list": {"get": _protected({
        "summary": "every file, grouped by base name (LOBCDER shape), paginated",
        "operationId": "listFiles",
        "parameters": [{"name": "site", "in": "query", "schema": {"type": "string"}},
                       {"name": "prefix", "in": "query", "schema": {"type": "string"}},
                       _LIMIT, _CURSOR],
        "responses": {"200": {**_json({"type": "object", "additionalProperties": {
            "type": "array", "items": _ref("LocationEntry")}}), "headers": _LINK}}}, "404")},
    "/api/v1/find/{name}": {"get": _protected({
        "summary": "where a file of this base name is, on every site",
        "operationId": "findByName",
        "parameters": [{"name": "name", "in": "path", "required": True,
                        "schema": {"type": "string", "minLength": 1}},
                       {"name": "site", "in": "query", "schema": {"type": "string"}},
                       _LIMIT],
        "responses": {"200": _json({"type": "array", "items": _ref("LocationEntry")})}},
        "404")},
    "/api/v1/find": {"get": _protected({
        "summary": "find by glob of the base name, by path, or by name",
        "operationId": "find",
        "parameters": [{"name": "glob", "in": "query", "schema": {"type": "string"}},
                       {"name": "path", "in": "query", "schema": {"type": "string"}},
                       {"name": "name", "in": "query", "schema": {"type": "string"}},
                       {"name": "site", "in": "query", "schema": {"type": "string"}},
                       _LIMIT],
        "responses": {"200": _json({"type": "array", "items": _ref("LocationEntry")})}},
        "404")},
    "/api/v1/refresh": {"post": _protected({
        "summary": "crawl the sites again now", "operationId": "refresh",
        "parameters": [{"name": "site", "in": "query", "schema": {"type": "string"}}],
        "responses": {"200": _json({"type": "object", "required": ["sites"],
                                    "properties": {"sites": {"type": "object"}}})}}, "404")},
    "/api/v1/copy": {
        "post": _protected({
            "summary": "submit copy jobs (one request or a list; LOBCDER shape)",
            "operationId": "submitCopy",
            "requestBody": {"required": True, "content": {"application/json": {"schema": {
                "oneOf": [_ref("CopyRequest"),
                          {"type": "array", "minItems": 1, "items": _ref("CopyRequest")}]}}}},
            "responses": {"202": _json({"type": "array", "items": _ref("CopyAccepted")},
                                       "accepted (stored before this answer)")}},
            "404", "409", "413", "422"),
        "get": _protected({
            "summary": "the caller's jobs, newest first", "operationId": "listJobs",
            "parameters": [{"name": "status", "in": "query", "schema": _ref("JobStatusName")},
                           {**_LIMIT, "schema": {"type": "integer", "minimum": 1,
                                                 "maximum": 1000}}, _CURSOR],
            "responses": {"200": {**_json({"type": "array", "items": _ref("Job")}),
                                  "headers": _LINK}}})},
    "/api/v1/copy/{id}": {
        "parameters": [{"name": "id", "in": "path", "required": True,
                        "schema": {"type": "string"}}],
        "get": _protected({"summary": "status of a job", "operationId": "getJob",
                           "responses": {"200": _json(_ref("Job"))}}, "404"),
        "delete": _protected({
            "summary": "cancel a job (a running transfer stops within seconds)",
            "operationId": "cancelJob",
            "responses": {"200": _json(_ref("Job"), "cancelled or already finished"),
                          "202": _json(_ref("Job"), "cancel requested; stopping")}}, "404")},
    "/api/v1/infrastructure": {"get": _protected({
        "summary": "exposed services and sites (LOBCDER shape)",
        "operationId": "infrastructure",
        "responses": {"200": _json({"type": "array", "items": _ref("Service")})}})},
}


def openapi_document() -> dict[str, Any]:
    return {
        "openapi": "3.0.3",
        "info": {"title": "fedgate staging and query API", "version": "1.0.0",
                 "description": "Where files are, and copy jobs between sites (SPEC 5)."},
        "paths": copy.deepcopy(PATHS),
        "components": {
            "schemas": copy.deepcopy(SCHEMAS),
            "securitySchemes": {
                "basic": {"type": "http", "scheme": "basic"},
                "bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"},
                "accessToken": {"type": "apiKey", "in": "header", "name": "x-access-token"}}},
    }
