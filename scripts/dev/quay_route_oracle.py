#!/usr/bin/env python3
"""The route oracle: asks Quay's own router which view serves each of several thousand requests.

Run with Quay's virtualenv (scripts/setup.sh builds it in .quay/):

    .quay/.venv/bin/python scripts/dev/quay_route_oracle.py --features on|off [--cases]

It imports Quay v3.18's Flask app from .quay/src (web.py and registry.py, as .quay/wsgi does:
every blueprint on one app) with a throw-away config and no running service (importing Quay
only configures its database and Redis clients, and the one client that would connect at import,
the global lock's, is replaced), then
for every generated request prints one JSON line: the method, the request target exactly as
Envoy forwards it (and quay-authz sees it), and what Quay's router does with it.

Requests reach Quay's router as gunicorn and Werkzeug hand them over: gunicorn percent-decodes
the path into PATH_INFO (`unquote_to_wsgi_str`, keeping repeated slashes), Werkzeug decodes the
WSGI string as UTF-8 (`_wsgi_decoding_dance`) and `MapAdapter.match` strips leading slashes.

`--features on` turns every FEATURE_* flag Quay knows on, `off` turns them all off. Quay
evaluates `@show_if(features.X)` when its modules are imported, so each setting needs its own
process. `--cases` only prints the generated requests (no Quay needed).
"""
import argparse
import json
import os
import re
import sys
import tempfile
import urllib.parse

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
QUAY = os.environ.get("QUAY_DIR", os.path.join(ROOT, ".quay"))
ROUTES = os.path.join(ROOT, "tests/data/quay-api-routes.json")

DIGEST = "sha256:" + "a" * 64


def all_feature_names(src):
    """Every FEATURE_* name in Quay's default config and every `features.X` its code reads."""
    names = set()
    for directory, _, files in os.walk(src):
        if any(part in directory for part in ("/test", "/node_modules", "/web/", "/static")):
            continue
        for name in files:
            if not name.endswith(".py"):
                continue
            with open(os.path.join(directory, name), encoding="utf-8", errors="replace") as f:
                text = f.read()
            names.update(re.findall(r"\bFEATURE_([A-Z][A-Z0-9_]*)\b", text))
            names.update(re.findall(r"\bfeatures\.([A-Z][A-Z0-9_]*)\b", text))
    return sorted(names)


def write_config(conf_dir, features_on, src):
    """A config Quay accepts at import; nothing in it is ever connected to."""
    import yaml

    stack = os.path.join(conf_dir, "stack")
    os.makedirs(stack, exist_ok=True)
    storage = os.path.join(conf_dir, "storage")
    redis = {"host": "127.0.0.1", "port": 1}
    cfg = {
        "SERVER_HOSTNAME": "localhost:8080",
        "PREFERRED_URL_SCHEME": "http",
        "SETUP_COMPLETE": True,
        "TESTING": False,
        "DB_URI": "postgresql://quay:quay@127.0.0.1:1/quay",
        "BUILDLOGS_REDIS": dict(redis),
        "USER_EVENTS_REDIS": dict(redis),
        "PULL_METRICS_REDIS": dict(redis),
        "DATA_MODEL_CACHE_CONFIG": {"engine": "inmemory"},
        "PROMETHEUS_PUSHGATEWAY_URL": None,
        "DISTRIBUTED_STORAGE_CONFIG": {"default": ["LocalStorage", {"storage_path": storage}]},
        "DISTRIBUTED_STORAGE_PREFERENCE": ["default"],
        "DISTRIBUTED_STORAGE_DEFAULT_LOCATIONS": [],
        "USERFILES_LOCATION": "default",
        "USERFILES_PATH": "userfiles/",
        "LOG_ARCHIVE_LOCATION": "default",
        "ACTION_LOG_ARCHIVE_LOCATION": "default",
        "AUTHENTICATION_TYPE": "Database",
        "SUPER_USERS": ["admin"],
        "DATABASE_SECRET_KEY": "oracle-database-secret",
        "SECRET_KEY": "oracle-secret",
        "BITTORRENT_FILENAME_PEPPER": "oracle-pepper",
        "USE_CDN": False,
        # Settings features need to import when on; never contacted.
        "SECURITY_SCANNER_V4_ENDPOINT": "http://127.0.0.1:1",
        "SECURITY_SCANNER_V4_PSK": "b3JhY2xl",
    }
    for name in all_feature_names(src):
        cfg["FEATURE_" + name] = features_on
    with open(os.path.join(stack, "config.yaml"), "w") as f:
        yaml.safe_dump(cfg, f)


def load_quay(features_on):
    src = os.path.join(QUAY, "src")
    if not os.path.isfile(os.path.join(src, "app.py")):
        sys.exit(f"no Quay source at {src}: run scripts/setup.sh")
    conf = tempfile.mkdtemp(prefix="quay-oracle-")
    write_config(conf, features_on, src)
    os.environ["QUAYCONF"] = conf + "/"
    os.environ.pop("TEST", None)
    sys.path.insert(0, src)
    os.chdir(src)
    import logging

    logging.disable(logging.CRITICAL)
    # The one import-time connection: Quay's global lock opens a Redis client when configured.
    # The router never takes the lock, so it gets a factory that is never called.
    from util.locking import GlobalLock

    GlobalLock.lock_factory = lambda *args, **kwargs: None
    import web  # noqa: F401  (the API and web blueprints)
    import registry  # noqa: F401  (/v1 and /v2)
    from app import app

    return app


# --- the requests -------------------------------------------------------------------------------


def route_templates():
    with open(ROUTES) as f:
        routes = json.load(f)["routes"]
    methods = {}
    for route in routes:
        methods.setdefault(route["path"], []).append(route["method"])
    return methods


# Registry v2 rules (endpoints/v2/*.py), in the same template spelling.
V2_TEMPLATES = {
    "/v2/": ["GET"],
    "/v2/_catalog": ["GET"],
    "/v2/<apirepopath:repository>/manifests/<reference>": ["GET", "PUT", "DELETE"],
    "/v2/<apirepopath:repository>/blobs/<reference>": ["GET", "DELETE"],
    "/v2/<apirepopath:repository>/blobs/uploads/": ["POST"],
    "/v2/<apirepopath:repository>/blobs/uploads/<upload_uuid>": ["GET", "PATCH", "PUT", "DELETE"],
    "/v2/<apirepopath:repository>/tags/list": ["GET"],
    "/v2/<apirepopath:repository>/referrers/<reference>": ["GET"],
    "/v2/auth": ["GET"],
}


def route_words(templates):
    """Every static segment that follows a repository in some rule: a repository may end in one."""
    words = set()
    for path in templates:
        if "<apirepopath:repository>" in path:
            for segment in path.split("<apirepopath:repository>", 1)[1].split("/"):
                if segment and "<" not in segment:
                    words.add(segment)
    return sorted(words)


def repositories(words):
    names = ["acme/app", "acme/team/app", "acme/a/b/c"]
    names += [f"acme/app/{word}" for word in words]
    # A name that ends in a route word and a value: `acme/app/tag/latest`, `acme/app/build/b1`.
    names += ["acme/app/tag/latest", "acme/app/build/b1", "acme/app/manifest/" + DIGEST]
    return names


def instantiate(template, repository, variant):
    """Fills a template's parameters; `variant` 1 puts route words where plain values were."""

    def value(match):
        spec = match.group(1)
        name = spec.rsplit(":", 1)[-1]
        if name == "repository":
            return repository
        if name == "manifestref":
            return DIGEST if variant == 0 else "latest"
        if name == "reference":
            return DIGEST if variant == 0 else "latest"
        if name in ("orgname", "namespace", "username"):
            return "acme" if variant == 0 else "members"
        return "p1" if variant == 0 else "logs"

    return re.sub(r"<([^>]+)>", value, template)


def encode_one(text, index):
    return text[:index] + "%{:02X}".format(ord(text[index])) + text[index + 1 :]


def spellings(path, full):
    """The request targets for one path: as is, and as an attacker or a sloppy client spells it."""
    out = [path]
    out.append(path[:-1] if path.endswith("/") and len(path) > 1 else path + "/")
    out.append("//" + path)
    if not full:
        return out
    out.append("/" + path)
    out.append(path.rstrip("/") + "/extra")
    out.append(path.rstrip("/") + "/extra/more")
    out.append(path + "?x=1")
    # Doubled slashes inside, after the prefix and before the last segment.
    parts = path.split("/")
    if len(parts) > 3:
        out.append("/".join(parts[:3]) + "//" + "/".join(parts[3:]))
        out.append("/".join(parts[:-1]) + "//" + parts[-1])
    # Percent-encodings: a letter of the prefix, a slash of the name, a letter of the last part.
    out.append(encode_one(path, 1))
    if "acme/" in path:
        at = path.index("acme/") + 4
        out.append(path[:at] + "%2F" + path[at + 1 :])
        out.append(path[:at] + "%2f" + path[at + 1 :])
    last = path.rstrip("/").rfind("/") + 1
    if last < len(path) and path[last].isalpha():
        out.append(encode_one(path, last))
    out.append("/" + encode_one(path, 0))  # `/%2Fapi/…`: a leading slash, encoded
    # Case changes: the prefix, and the last segment.
    out.append(path[:4].upper() + path[4:])
    out.append(path[:last] + path[last:].upper())
    # A dot segment that resolves back to the same path (Werkzeug does not resolve it).
    if "acme/" in path:
        out.append(path.replace("acme/", "acme/x/../", 1))
    return out


def generate():
    templates = route_templates()
    words = route_words(templates)
    repos = repositories(words)
    cases = set()
    all_templates = dict(templates)
    all_templates.update(V2_TEMPLATES)
    for template, methods in all_templates.items():
        other = "PATCH" if "PATCH" not in methods else "PUT"
        every = sorted(set(methods) | {"HEAD", "OPTIONS", other})
        names = repos if "<apirepopath:repository>" in template else [None]
        for repository in names:
            # Plain and nested names get every spelling and method; names that end in a route
            # word (where the router's choice is at stake) the rule's own methods, as is, with
            # the trailing slash toggled and behind `//`.
            plain = repository in ("acme/app", "acme/team/app", None)
            for variant in (0, 1) if plain else (0,):
                path = instantiate(template, repository, variant)
                full = plain and variant == 0
                for target in spellings(path, full):
                    for method in every if plain else methods:
                        cases.add((method, target))
    return sorted(cases)


# --- asking Quay --------------------------------------------------------------------------------


def path_info(target):
    """PATH_INFO as gunicorn sets it and Werkzeug reads it back."""
    raw = target.split("?", 1)[0]
    return urllib.parse.unquote_to_bytes(raw).decode("latin-1").encode("latin-1").decode(
        "utf-8", "replace"
    )


# `<converter(arguments):name>` → `<name>`; the arguments may hold quoted `:`, `)` and `>`.
CONVERTER = re.compile(r"""<(?:\w+(?:\((?:"[^"]*"|'[^']*'|[^)"'])*\))?:)?(\w+)>""")


def plain_rule(rule):
    return CONVERTER.sub(r"<\1>", rule)


def resource_possible(args):
    """Whether the repository or namespace the router resolved is a name Quay could hold: Quay
    validates every name it creates with these (repository creation, push, user and org
    creation), so for any other name its view can only answer 404."""
    from util.names import REPOSITORY_NAME_EXTENDED_REGEX
    from util.validation import validate_username

    repository = args.get("repository")
    if repository is not None:
        namespace, _, name = str(repository).partition("/")
        if not validate_username(namespace)[0] or not REPOSITORY_NAME_EXTENDED_REGEX.match(name):
            return False
    orgname = args.get("orgname")
    if orgname is not None and not validate_username(str(orgname))[0]:
        return False
    return True


def ask(adapter, method, target):
    from werkzeug.exceptions import MethodNotAllowed, NotFound
    from werkzeug.routing import RequestRedirect

    try:
        rule, args = adapter.match(path_info(target), method=method, return_rule=True)
    except RequestRedirect as redirect:
        return {"kind": "redirect", "to": redirect.new_url}
    except MethodNotAllowed:
        return {"kind": "method_not_allowed"}
    except NotFound:
        return {"kind": "not_found"}
    return {
        "kind": "view",
        "resource_possible": resource_possible(args),
        "endpoint": rule.endpoint,
        "rule": plain_rule(rule.rule),
        "args": {key: str(value) for key, value in args.items()},
        # Flask answers OPTIONS itself, without the view, for rules that do not define it.
        "auto_options": bool(getattr(rule, "provide_automatic_options", False)),
    }


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--features", choices=["on", "off"])
    parser.add_argument("--cases", action="store_true", help="print the requests only")
    options = parser.parse_args()
    cases = generate()
    if options.cases:
        for method, target in cases:
            print(json.dumps({"method": method, "target": target}))
        return
    if not options.features:
        parser.error("--features on|off")
    app = load_quay(options.features == "on")
    adapter = app.url_map.bind("localhost:8080", script_name="/", url_scheme="http")
    out = sys.stdout
    header = {
        "features": options.features,
        "cases": len(cases),
        "rules": len(list(app.url_map.iter_rules())),
    }
    out.write(json.dumps(header) + "\n")
    for method, target in cases:
        answer = ask(adapter, method, target)
        answer["method"] = method
        answer["target"] = target
        out.write(json.dumps(answer) + "\n")


if __name__ == "__main__":
    main()
