#!/usr/bin/env python3
"""Prints CREATE OR REPLACE statements for the functions whose definition differs between two
pg_dialer install scripts (the previous release's and the one `cargo pgrx install` just wrote).
A help for writing sql/upgrade/pg_dialer--A--B.sql by hand; the upgrade test checks the result.

    python3 scripts/upgrade-functions.py sql/upgrade/pg_dialer--0.1.0.sql $PREFIX/.../pg_dialer--0.2.0.sql
"""
import re
import sys

FUNC = re.compile(r'CREATE (?:OR REPLACE )?FUNCTION\s+(?:"?dialer"?\.)?"?(\w+)"?\s*\(')


def functions(path):
    text = open(path).read()
    found = {}
    for m in FUNC.finditer(text):
        dollar = text.find('$$;', m.end())
        semi = text.find(';\n', m.end())
        # A body in $$ … $$ ends at "$$;"; a C function (AS 'MODULE_PATHNAME') at the first ";".
        if dollar != -1 and text.rfind('$$', m.end(), semi if semi != -1 else len(text)) != -1:
            end = dollar + 3
        else:
            end = semi + 1
        found.setdefault(m.group(1), []).append(text[m.start():end])
    return found


old, new = functions(sys.argv[1]), functions(sys.argv[2])
for name in sorted(set(old) | set(new)):
    if old.get(name) == new.get(name):
        continue
    if name not in new:
        print(f'-- {name}: dropped in the new version; write its DROP FUNCTION by hand\n')
        continue
    if name in old and len(old[name]) == len(new[name]):
        note = 'changed'
    else:
        note = 'new (or a new signature: DROP the old one first)'
    print(f'-- {name}: {note}')
    for body in new[name]:
        print(re.sub(r'^CREATE (OR REPLACE )?FUNCTION', 'CREATE OR REPLACE FUNCTION', body) + '\n')
