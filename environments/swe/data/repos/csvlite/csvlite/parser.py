"""A small CSV reader (quoted fields, doubled quotes) and a flat INI-style config parser."""


def split_line(line, delimiter=","):
    """Split one CSV line into fields."""
    fields, cur, quoted, i = [], [], False, 0
    while i < len(line):
        ch = line[i]
        if quoted:
            if ch == '"':
                if i + 1 < len(line) and line[i + 1] == '"':
                    cur.append('"')
                    i += 1
                else:
                    quoted = False
            else:
                cur.append(ch)
        elif ch == '"':
            quoted = True
        elif ch == delimiter:
            fields.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
        i += 1
    if quoted:
        raise ValueError(f"unterminated quote in line: {line!r}")
    fields.append("".join(cur))
    return fields


def parse(text, delimiter=","):
    """Rows of ``text`` as dicts keyed by the header row."""
    rows = [split_line(ln, delimiter) for ln in text.splitlines() if ln.strip()]
    if not rows:
        return []
    header, *body = rows
    out = []
    for n, row in enumerate(body, start=2):
        if len(row) != len(header):
            raise ValueError(f"line {n}: expected {len(header)} fields, got {len(row)}")
        out.append(dict(zip(header, row)))
    return out


def parse_config(text):
    """``[section]`` / ``key = value`` lines -> ``{"section.key": "value"}``; ``#`` comments."""
    data, section = {}, None
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1].strip()
            continue
        if "=" not in line:
            raise ValueError(f"not a key = value line: {raw!r}")
        key, value = (p.strip() for p in line.split("=", 1))
        data[f"{section}.{key}" if section else key] = value
    return data
