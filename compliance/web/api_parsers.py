"""The API's JSON parser (REST_FRAMEWORK's DEFAULT_PARSER_CLASSES). A module of its own:
DRF reads the setting while compliance.web.api's views are being defined."""

from __future__ import annotations

import json

from rest_framework.exceptions import ParseError
from rest_framework.parsers import JSONParser

from compliance.params import DuplicateKey, unique_keys


def _no_constant(name: str):
    raise ValueError(f"{name} is not JSON")


class JSONBody(JSONParser):
    """DRF's JSON parser, refusing as a 400 what it would take or fail on with a 500: a
    key given twice (which one would count?) and nesting deep enough to exhaust Python's
    recursion."""

    def parse(self, stream, media_type=None, parser_context=None):

        encoding = (parser_context or {}).get("encoding") or "utf-8"
        try:
            return json.loads(
                stream.read().decode(encoding),
                object_pairs_hook=unique_keys,
                parse_constant=_no_constant,
            )
        except RecursionError:
            raise ParseError("JSON parse error - nested too deeply") from None
        except DuplicateKey as e:
            raise ParseError(f"JSON parse error - the key {e} is given twice") from None
        except ValueError as e:
            raise ParseError(f"JSON parse error - {e}") from None
