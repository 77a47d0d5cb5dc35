"""What every JSON body the gateway reads checks beyond its fields' types."""

from typing import Any

from pydantic import BaseModel, field_validator
from pydantic_core import PydanticCustomError


class Body(BaseModel):
    """A request's JSON body, whose text is Unicode: JSON may escape a lone UTF-16 surrogate
    (`"\\ud800"`), which Python's json accepts and no service can encode, so the request is
    refused here (400, naming the field) instead of failing on its way to a service."""

    @field_validator("*")
    @classmethod
    def _unicode(cls, value: Any) -> Any:
        if not _is_unicode(value):
            raise PydanticCustomError(
                "unicode_invalid", "holds a lone UTF-16 surrogate escape, which is not text"
            )
        return value


def _is_unicode(value: Any) -> bool:
    if isinstance(value, str):
        try:
            value.encode()
        except UnicodeEncodeError:
            return False
        return True
    if isinstance(value, dict):
        return all(_is_unicode(key) and _is_unicode(item) for key, item in value.items())
    if isinstance(value, list | tuple):
        return all(_is_unicode(item) for item in value)
    return True
