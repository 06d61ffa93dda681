"""
Tests for L{pluginserver.declared}: a plugin's declared C{args}, checked at
load and applied to each request before C{handle}.
"""

from __future__ import annotations

import os
from typing import Any

from twisted.internet import defer
from twisted.trial.unittest import SynchronousTestCase

from pluginserver.declared import ArgumentError, Declared, check_declaration
from pluginserver.registry import PluginRegistry
from tests.helpers import ServerCase


def declare(**specs: Any) -> Declared:
    """
    A checked declaration of C{specs}.
    """
    return check_declaration(specs)


class ApplyTests(SynchronousTestCase):
    """
    L{Declared.apply} converts declared arguments, fills in defaults and
    refuses what does not fit.
    """

    def assertRefused(self, declared: Declared, args: dict[str, Any], message: str) -> None:
        with self.assertRaises(ArgumentError) as caught:
            declared.apply(args)
        self.assertEqual(str(caught.exception), message)

    def test_string(self) -> None:
        """
        A string stays a string; any other JSON value is refused.
        """
        declared = declare(s={"type": "string"})
        self.assertEqual(declared.apply({"s": "x"}), {"s": "x"})
        self.assertEqual(declared.apply({"s": ""}), {"s": ""})
        for value in (3, 2.5, True, None, [1], {"a": 1}, b"raw"):
            self.assertRefused(declared, {"s": value}, "parameter 's': must be a string")

    def test_integer(self) -> None:
        """
        Decimal digits with an optional sign become an int, and a JSON
        integer is taken as it is; anything else (a bool too) is refused.
        """
        declared = declare(n={"type": "integer"})
        for given, expected in (("3", 3), ("-12", -12), ("+7", 7), ("007", 7), (5, 5)):
            result = declared.apply({"n": given})
            self.assertEqual(result, {"n": expected})
            self.assertIs(type(result["n"]), int)
        for value in ("", "3.0", "1e3", " 3", "3 ", "1_000", "٣", "x", 2.5, 3.0, True, None, []):
            self.assertRefused(declared, {"n": value}, "parameter 'n': must be an integer")

    def test_hugeInteger(self) -> None:
        """
        An integer too long for int() to read is refused, not a 500.
        """
        declared = declare(n={"type": "integer"})
        self.assertRefused(declared, {"n": "9" * 100_000}, "parameter 'n': must be an integer")

    def test_number(self) -> None:
        """
        A decimal or exponent string becomes a float, and JSON numbers are
        taken as they are; non-finite values, bools and others are refused.
        """
        declared = declare(x={"type": "number"})
        for given, expected in (("2.5", 2.5), ("3", 3.0), ("-.5", -0.5), ("1e3", 1000.0)):
            self.assertEqual(declared.apply({"x": given}), {"x": expected})
        self.assertEqual(declared.apply({"x": 4}), {"x": 4})
        self.assertEqual(declared.apply({"x": 0.25}), {"x": 0.25})
        refused = ("", "nan", "inf", "-Infinity", "1e999", "1_0", "0x10", " 1", ".", "e3")
        for value in (*refused, float("nan"), float("inf"), True, None, "two"):
            self.assertRefused(declared, {"x": value}, "parameter 'x': must be a number")

    def test_boolean(self) -> None:
        """
        The words true/false, 1/0, yes/no, on/off (any case) and JSON
        booleans become bools; anything else is refused.
        """
        declared = declare(b={"type": "boolean"})
        for word in ("true", "1", "yes", "on", "TRUE", "Yes", True):
            self.assertIs(declared.apply({"b": word})["b"], True)
        for word in ("false", "0", "no", "off", "Off", False):
            self.assertIs(declared.apply({"b": word})["b"], False)
        for value in ("", "2", "y", "truthy", 1, 0, None):
            self.assertRefused(declared, {"b": value}, "parameter 'b': must be a boolean")

    def test_required(self) -> None:
        """
        An absent required argument is refused; present, it is converted.
        """
        declared = declare(n={"type": "integer", "required": True})
        self.assertRefused(declared, {}, "parameter 'n': required")
        self.assertRefused(declared, {"m": "1"}, "parameter 'n': required")
        self.assertEqual(declared.apply({"n": "1"}), {"n": 1})

    def test_defaults(self) -> None:
        """
        An absent optional argument gets its default, or stays absent when it
        has none; a given one wins over the default.
        """
        declared = declare(
            n={"type": "integer", "default": 10},
            loud={"type": "boolean", "default": False},
            tag={"type": "string"},
        )
        self.assertEqual(declared.apply({}), {"n": 10, "loud": False})
        self.assertEqual(declared.apply({"n": "2", "loud": "on"}), {"n": 2, "loud": True})

    def test_undeclaredLeftAlone(self) -> None:
        """
        Fields that are not declared pass through unchanged, and the given
        mapping is not changed.
        """
        declared = declare(n={"type": "integer"})
        given = {"n": "1", "other": "2", "data": [1, 2]}
        self.assertEqual(declared.apply(given), {"n": 1, "other": "2", "data": [1, 2]})
        self.assertEqual(given, {"n": "1", "other": "2", "data": [1, 2]})

    def test_firstErrorInDeclarationOrder(self) -> None:
        """
        When several arguments are wrong, the first declared is named.
        """
        declared = declare(a={"type": "integer", "required": True}, b={"type": "integer"})
        self.assertRefused(declared, {"b": "x"}, "parameter 'a': required")

    def test_empty(self) -> None:
        """
        An empty declaration leaves the arguments as they are.
        """
        self.assertEqual(check_declaration({}).apply({"a": "1"}), {"a": "1"})


class DeclarationTests(SynchronousTestCase):
    """
    L{check_declaration} refuses a wrong declaration with a message naming
    the parameter at fault, and keeps what a right one says.
    """

    def assertBad(self, args: Any, message: str) -> None:
        with self.assertRaises(ValueError) as caught:
            check_declaration(args)
        self.assertEqual(str(caught.exception), message)

    def test_kept(self) -> None:
        """
        Each parameter keeps its name, type, required flag, default and
        description, in declaration order.
        """
        declared = declare(
            n={"type": "integer", "required": True, "description": "how many"},
            x={"type": "number", "default": 1},
        )
        [n, x] = declared.parameters
        self.assertEqual(
            (n.name, n.type, n.required, n.description), ("n", "integer", True, "how many")
        )
        self.assertFalse(n.has_default)
        self.assertEqual((x.name, x.type, x.required, x.default), ("x", "number", False, 1))
        self.assertTrue(x.has_default)

    def test_notADict(self) -> None:
        self.assertBad(["n"], "args must be a dict of parameter specs, not list")
        self.assertBad("n", "args must be a dict of parameter specs, not str")

    def test_specNotADict(self) -> None:
        self.assertBad({"n": "integer"}, "parameter 'n': its spec must be a dict, not str")

    def test_badName(self) -> None:
        self.assertBad({1: {"type": "integer"}}, "parameter name 1 is not a non-empty string")
        self.assertBad({"": {"type": "integer"}}, "parameter name '' is not a non-empty string")

    def test_apikey(self) -> None:
        """
        apikey is never in request.args: declaring it is a mistake.
        """
        self.assertBad(
            {"apikey": {"type": "string"}},
            "parameter 'apikey': the server removes apikey from request.args",
        )

    def test_unknownType(self) -> None:
        self.assertBad(
            {"n": {"type": "int"}},
            "parameter 'n': unknown type 'int' (one of boolean, integer, number, string)",
        )
        self.assertBad(
            {"n": {}}, "parameter 'n': no type (one of boolean, integer, number, string)"
        )

    def test_unknownKey(self) -> None:
        self.assertBad(
            {"n": {"type": "integer", "requird": True}},
            "parameter 'n': unknown key(s) requird (known: default, description, required, type)",
        )

    def test_badRequired(self) -> None:
        self.assertBad(
            {"n": {"type": "integer", "required": "yes"}},
            "parameter 'n': required must be True or False, not 'yes'",
        )

    def test_badDescription(self) -> None:
        self.assertBad(
            {"n": {"type": "integer", "description": 3}},
            "parameter 'n': description must be a string, not 3",
        )

    def test_defaultOfWrongType(self) -> None:
        """
        A default must be of the declared type (bool is no integer; a
        number must be finite).
        """
        cases = [
            ("integer", "3"),
            ("integer", True),
            ("integer", 2.5),
            ("number", "2.5"),
            ("number", float("inf")),
            ("boolean", "false"),
            ("string", 3),
            ("string", None),
        ]
        for kind, default in cases:
            self.assertBad(
                {"n": {"type": kind, "default": default}},
                f"parameter 'n': default {default!r} is not of type {kind}",
            )

    def test_requiredWithDefault(self) -> None:
        self.assertBad(
            {"n": {"type": "integer", "required": True, "default": 1}},
            "parameter 'n': a required parameter cannot have a default",
        )


PLUGIN = """
from pluginserver import Plugin


class Count(Plugin):
    methods = ("GET", "POST")
    args = {
        "n": {"type": "integer", "required": True, "description": "how many"},
        "loud": {"type": "boolean", "default": False},
        "x": {"type": "number"},
    }

    def handle(self, request):
        return {
            "args": dict(request.args),
            "types": {k: type(v).__name__ for k, v in sorted(request.args.items())},
        }
"""


class RouteTests(ServerCase):
    """
    Declared args through the server: converted before handle, 400s with
    the parameter named, and a wrong declaration fails the load.
    """

    @defer.inlineCallbacks
    def test_converted(self) -> Any:
        """
        Query values reach handle converted, with defaults filled in and
        undeclared fields as they were.
        """
        self.dir.write("count", PLUGIN)
        yield self.serve()
        status, _, body = yield self.call("GET", "/count?n=3&x=2.5&other=7")
        self.assertEqual(status, 200)
        self.assertEqual(body["args"], {"n": 3, "x": 2.5, "other": "7", "loud": False})
        self.assertEqual(body["types"], {"loud": "bool", "n": "int", "other": "str", "x": "float"})

    @defer.inlineCallbacks
    def test_jsonBody(self) -> Any:
        """
        Values of the right JSON type in a JSON body are taken as they are;
        a form body is converted like the query.
        """
        self.dir.write("count", PLUGIN)
        yield self.serve()
        status, _, body = yield self.call("POST", "/count", json={"n": 4, "loud": True, "x": 1})
        self.assertEqual((status, body["args"]), (200, {"n": 4, "loud": True, "x": 1}))
        status, _, body = yield self.call("POST", "/count", data={"n": "5", "loud": "yes"})
        self.assertEqual((status, body["args"]), (200, {"n": 5, "loud": True}))

    @defer.inlineCallbacks
    def test_refused(self) -> Any:
        """
        A missing required argument or a value of the wrong type is a 400
        naming the parameter; handle is not called.
        """
        self.dir.write("count", PLUGIN)
        yield self.serve()
        for path, message in (
            ("/count", "parameter 'n': required"),
            ("/count?n=three", "parameter 'n': must be an integer"),
            ("/count?n=1&loud=maybe", "parameter 'loud': must be a boolean"),
            ("/count?n=1&x=inf", "parameter 'x': must be a number"),
        ):
            status, _, body = yield self.call("GET", path)
            self.assertEqual((status, body), (400, {"error": message}), path)
        status, _, body = yield self.call("POST", "/count", json={"n": True})
        self.assertEqual((status, body), (400, {"error": "parameter 'n': must be an integer"}))

    @defer.inlineCallbacks
    def test_undeclaredPluginUntouched(self) -> Any:
        """
        A plugin that declares nothing gets request.args as they came, and
        its generation carries no declaration.
        """
        self.dir.write(
            "plain",
            "from pluginserver import Plugin\n\n"
            "class Plain(Plugin):\n"
            "    def handle(self, request):\n"
            "        return dict(request.args)\n",
        )
        yield self.serve()
        self.assertIsNone(self.registry.get("plain").declared)
        status, _, body = yield self.call("GET", "/plain?n=3")
        self.assertEqual((status, body), (200, {"n": "3"}))

    @defer.inlineCallbacks
    def test_badDeclarationFailsReload(self) -> Any:
        """
        A wrong declaration fails the load: /reload/<name> reports it with
        the parameter named, and the generation already serving keeps
        serving.
        """
        self.dir.write("count", PLUGIN)
        yield self.serve()
        self.dir.write("count", PLUGIN.replace('"type": "number"', '"type": "float"'))
        status, _, body = yield self.call("GET", "/reload/count")
        self.assertEqual(status, 500)
        self.assertEqual(
            body,
            {
                "reloaded": "count",
                "success": False,
                "error": "args: parameter 'x': unknown type 'float' "
                "(one of boolean, integer, number, string)",
                "generation": 1,
            },
        )
        status, _, body = yield self.call("GET", "/count?n=1&x=2")
        self.assertEqual((status, body["args"]["x"]), (200, 2.0))

    @defer.inlineCallbacks
    def test_badDeclarationNotStarted(self) -> Any:
        """
        A plugin with a wrong declaration is refused before it is made, so
        its start() never runs, and it does not serve.
        """
        self.dir.write(
            "bad",
            "from pluginserver import Plugin\n\n"
            "class Bad(Plugin):\n"
            "    args = {'n': {'type': 'integer', 'default': 'ten'}}\n"
            "    def start(self):\n"
            "        raise AssertionError('started')\n"
            "    def handle(self, request):\n"
            "        return 1\n",
        )
        yield self.serve()
        self.assertIsNone(self.registry.get("bad"))
        status, _, body = yield self.call("GET", "/reload/bad")
        self.assertEqual(status, 500)
        self.assertEqual(body["error"], "args: parameter 'n': default 'ten' is not of type integer")

    def test_badDeclarationChecked(self) -> None:
        """
        C{--check} (L{PluginRegistry.check_all}) reports a wrong declaration
        as that plugin's failure, and a right one as fine.
        """
        self.dir.write("count", PLUGIN)
        self.dir.write(
            "bad",
            PLUGIN.replace("class Count", "class Bad")
            .replace('"x": {', '"x": [{')
            .replace('"number"}', '"number"}]'),
        )
        registry = PluginRegistry(self.dir.path, {}, package=f"_check_{os.getpid()}_{id(self)}")
        self.addCleanup(registry.close)
        self.assertEqual(
            registry.check_all(),
            {
                "bad": ("bad", "args: parameter 'x': its spec must be a dict, not list"),
                "count": ("count", None),
            },
        )
