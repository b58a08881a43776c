"""Credentials out of URLs before they are shown: printed, logged, or recorded in MLflow.

A URL may carry a secret in two places: its userinfo (`http://user:secret@host`,
`postgresql://user:pw@db/mlflow`) and its query (`?api_key=...`, `&sig=...` of a
presigned or SAS URL). The program still uses the URL as given; only the text
that leaves it goes through `redact_urls`. Standard library only, so every layer
(tracking, judge clients, the CLI) can import it without heavy dependencies.
"""

from __future__ import annotations

import re

MASK = "***"

# scheme://userinfo@ : the userinfo runs to the last "@" before the host's end ("/", "?", "#", whitespace,
# a quote or a bracket), so a password holding a stray "@" is masked whole.
_USERINFO = re.compile(r"(?P<scheme>\b[a-zA-Z][a-zA-Z0-9+.-]*://)[^/?#\s'\"<>()\[\]]*@")

# ?name=value / &name=value where the name ends in a word that names a secret: key, api_key, apikey,
# token, access_token, secret, client_secret, password, pwd, sig, signature, X-Amz-Signature,
# X-Amz-Credential, X-Amz-Security-Token, ... Masking a harmless parameter is the cheaper mistake.
_SECRET_QUERY = re.compile(
    r"(?P<name>[?&;][\w.-]*?(?:key|token|secret|password|passwd|pwd|sig|signature|credential)=)[^&#\s'\"<>]*",
    re.IGNORECASE,
)


def redact_urls(text: str) -> str:
    """`text` (a URL, or any text holding URLs) with every URL's userinfo and secret query values masked.

    `http://user:secret@host:8000/v1?api_key=k&n=1` -> `http://***@host:8000/v1?api_key=***&n=1`.
    """
    text = _USERINFO.sub(rf"\g<scheme>{MASK}@", text)
    return _SECRET_QUERY.sub(rf"\g<name>{MASK}", text)
