"""What a deployment file or a log must never hold: credentials, by pattern."""

import re

SECRET_PATTERNS = [
    re.compile(r"AKIA[0-9A-Z]{16}"),                                  # AWS access key id
    re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
    re.compile(r"(?i)(password|secret|token|access_key)[\w]*\s*[:=]\s*['\"]?(?![$'\"]|change-me)[^\s'\"$]{6,}"),
    re.compile(r"://[^/\s:@$]+:[^/\s@$]+@"),                            # user:password@ in a URI
]


def leaks(text: str) -> list[str]:
    return [m.group(0) for p in SECRET_PATTERNS for m in p.finditer(text)]
