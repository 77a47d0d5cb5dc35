"""The API's JSON responses: UTF-8, said so in the Content-Type as the contract asks."""

from starlette.responses import JSONResponse as StarletteJSONResponse


class JSONResponse(StarletteJSONResponse):
    media_type = "application/json; charset=utf-8"
