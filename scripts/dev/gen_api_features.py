#!/usr/bin/env python3
"""Writes tests/data/quay-api-features.json: the API paths Quay registers only when a feature is
on (`@show_if` under `@resource` in endpoints/api/*.py). A path whose feature is off is not in
Quay's router, so a request for it falls through to the next rule; quay-authz demands both.

Run from the repository root after scripts/setup.sh copied Quay's source into .quay/src:
python3 scripts/dev/gen_api_features.py
"""
import glob, json, pathlib, re

root = pathlib.Path(__file__).resolve().parents[2]
src = root / ".quay/src"
gated = {}
for file in sorted(glob.glob(str(src / "endpoints/api/*.py"))):
    lines = open(file).read().split("\n")
    i = 0
    while i < len(lines):
        if lines[i].startswith("@resource("):
            j, block = i, []
            while j < len(lines) and not lines[j].startswith("class "):
                block.append(lines[j])
                j += 1
            text = "\n".join(block)
            features = re.findall(r"@show_if\(([^\n]+)\)\s*$", text, re.M)
            urls = re.findall(r"[\"'](/v1/[^\"']*)[\"']", text)
            if "MANIFEST_DIGEST_ROUTE" in text:
                suffix = re.search(r"MANIFEST_DIGEST_ROUTE\s*\+\s*[\"']([^\"']*)", text)
                urls = ["/v1/repository/<apirepopath:repository>/manifest/<manifestref>"
                        + (suffix.group(1) if suffix else "")]
            urls = [re.sub(r"<regex\([^>]*\):manifestref>", "<manifestref>", u) for u in urls]
            if features:
                for url in urls:
                    gated["/api" + url] = sorted(set(features))
            i = j
        i += 1
out = {"source": "quay/quay v3.18.0 endpoints/api/*.py: the @show_if conditions of each @resource path (a condition that is false drops the path's rule from Quay's router); written by scripts/dev/gen_api_features.py",
       "feature_gated": gated}
(root / "tests/data/quay-api-features.json").write_text(json.dumps(out, indent=1, sort_keys=True))
print(f"{len(gated)} gated paths written")
