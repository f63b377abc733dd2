"""The app's logic. Importing it protects every later log record of the app and of its HTTP
libraries from a URL's credentials (shared/common/redact.py)."""
from .common.redact import install_log_redaction

install_log_redaction()
