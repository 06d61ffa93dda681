"""
The smallest plugin: GET /hello?name=you -> {"hello": "you"}.
"""

from pluginserver import Plugin


class Hello(Plugin):
    def handle(self, request):
        return {"hello": request.args.get("name", "world")}
