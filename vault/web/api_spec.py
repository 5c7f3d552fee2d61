"""The OpenAPI 3 document served at ``/api/v1/openapi.json`` (kept by hand, tested)."""

from __future__ import annotations

from typing import Any

NULLABLE_TIME = {"type": "string", "format": "date-time", "nullable": True}


def _json(schema_ref: str, description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{schema_ref}"}}},
    }


def _errors(*statuses: int) -> dict[str, Any]:
    descriptions = {
        400: (
            "A parameter is malformed or unknown (errors `unknown_parameter`, "
            "`invalid_provider`, `invalid_tag`, `invalid_owner`)."
        ),
        401: "No, an unknown or a revoked service key.",
        403: "The key may not read this provider's connections.",
        404: "No such connection, or one of a provider the key may not read.",
        409: (
            "The account must be connected again (error `needs_reconnect`), or its provider "
            "is no longer in the providers file (error `provider_not_configured`)."
        ),
        429: (
            "Too many refused service keys from this address (error `too_many_requests`); "
            "a valid key is never refused. See Retry-After."
        ),
        500: "A stored value cannot be decrypted (error `undecryptable`).",
        503: "The token has expired and the provider cannot be reached; see Retry-After.",
    }
    answers = {str(status): _json("Error", descriptions[status]) for status in statuses}
    if 429 in statuses:
        answers["429"]["headers"] = {
            "Retry-After": {
                "description": "Seconds until this address may try again.",
                "schema": {"type": "integer", "minimum": 1},
            }
        }
    return answers


def openapi_document() -> dict[str, Any]:
    """The API description as a plain dict."""
    connection_id = {
        "name": "connection_id",
        "in": "path",
        "required": True,
        "schema": {"type": "integer", "minimum": 1, "maximum": 2**31 - 1},
    }
    provider = {
        "name": "provider",
        "in": "query",
        "required": False,
        "description": "Only connections of this provider (a key from the providers file).",
        "schema": {"type": "string", "pattern": "^[a-z][a-z0-9_-]{0,63}$"},
    }
    tag = {
        "name": "tag",
        "in": "query",
        "required": False,
        "description": (
            "Only connections carrying this tag (lower-cased). For a tag-restricted key it "
            "narrows what the key may read: a tag outside the key's tags lists only the "
            "connections carrying both, often none, never an error."
        ),
        "schema": {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9_-]{0,31}$"},
    }
    owner = {
        "name": "owner",
        "in": "query",
        "required": False,
        "description": "Only connections owned by this e-mail address (case-insensitive).",
        "schema": {"type": "string", "format": "email", "maxLength": 320},
    }
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "Token Vault API",
            "version": "1",
            "description": (
                "Fresh access tokens for the company's integrations. Authenticate with a "
                "service key (`flask service-keys create NAME`) as `Authorization: Bearer "
                "<key>`. Every token handed out is audited. Responses are never cacheable."
            ),
        },
        "servers": [{"url": "/api/v1"}],
        "security": [{"serviceKey": []}],
        "paths": {
            "/connections": {
                "get": {
                    "operationId": "listConnections",
                    "summary": "Connections this key may read (no secrets).",
                    "parameters": [provider, tag, owner],
                    "responses": {
                        "200": _json("ConnectionList", "The connections, by id."),
                        **_errors(400, 401, 403, 429),
                    },
                }
            },
            "/connections/{connection_id}/access-token": {
                "get": {
                    "operationId": "getAccessToken",
                    "summary": "A usable access token, refreshed first when it expires soon.",
                    "parameters": [connection_id],
                    "responses": {
                        "200": _json("AccessToken", "The access token."),
                        **_errors(400, 401, 404, 409, 429, 500, 503),
                    },
                }
            },
        },
        "components": {
            "securitySchemes": {
                "serviceKey": {"type": "http", "scheme": "bearer", "bearerFormat": "tvk_..."}
            },
            "schemas": {
                "AccessToken": {
                    "type": "object",
                    "required": ["access_token", "token_type", "expires_at"],
                    "properties": {
                        "access_token": {"type": "string"},
                        "token_type": {"type": "string", "example": "Bearer"},
                        "expires_at": {
                            **NULLABLE_TIME,
                            "description": "UTC; null when the provider did not say.",
                        },
                    },
                },
                "Connection": {
                    "type": "object",
                    "required": ["id", "provider", "account_subject", "status", "scopes", "tags"],
                    "properties": {
                        "id": {"type": "integer"},
                        "provider": {"type": "string"},
                        "account_subject": {"type": "string"},
                        "account_email": {"type": "string", "nullable": True},
                        "account_name": {"type": "string", "nullable": True},
                        "status": {
                            "type": "string",
                            "enum": ["active", "needs_reconnect", "error", "disconnected"],
                        },
                        "scopes": {"type": "array", "items": {"type": "string"}},
                        "expires_at": NULLABLE_TIME,
                        "last_refreshed_at": NULLABLE_TIME,
                        "last_error": {"type": "string", "nullable": True},
                        "reconnect_by": {
                            **NULLABLE_TIME,
                            "description": "UTC; when the connection stops working unless a "
                            "person reconnects it (or replaces its credentials); null when no "
                            "deadline is known.",
                        },
                        "reconnect_reason": {
                            "type": "string",
                            "nullable": True,
                            "description": "Why, in words: the rule or stated expiry that "
                            "sets reconnect_by, or why there is none.",
                        },
                        "credential_kind": {
                            "type": "string",
                            "enum": ["person", "client_credentials", "service_account",
                                     "device", "api_key", "unknown"],
                            "description": "What kind of credential the connection is "
                            "(unknown: its provider left the providers file).",
                        },
                        "credential_key": {
                            "type": "object",
                            "nullable": True,
                            "description": "The private key a service account signs with "
                            "(never the key itself); null for other kinds.",
                            "required": ["id", "added_at", "age_days"],
                            "properties": {
                                "id": {"type": "string"},
                                "added_at": NULLABLE_TIME,
                                "age_days": {"type": "integer", "nullable": True},
                            },
                        },
                        "owner": {
                            "type": "string",
                            "nullable": True,
                            "description": "The e-mail address (lower-case) of the person "
                            "who answers for this connection; null when nobody is recorded.",
                        },
                        "purpose": {
                            "type": "string",
                            "nullable": True,
                            "description": "What the connection is for, in a sentence.",
                        },
                        "tags": {
                            "type": "array",
                            "items": {"type": "string"},
                            "description": "Its tags, sorted; service keys may be restricted "
                            "to tags.",
                        },
                    },
                },
                "ConnectionList": {
                    "type": "object",
                    "required": ["connections"],
                    "properties": {
                        "connections": {
                            "type": "array",
                            "items": {"$ref": "#/components/schemas/Connection"},
                        }
                    },
                },
                "Error": {
                    "type": "object",
                    "required": ["error"],
                    "properties": {
                        "error": {"type": "string"},
                        "message": {"type": "string"},
                    },
                },
            },
        },
    }
