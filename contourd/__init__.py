"""contourd core: version and the exception hierarchy shared by every package.

contourd auto-contours radiotherapy images for clinician review. It is not a
medical device; every structure it writes is labelled AUTOMATIC and UNAPPROVED.
"""

__version__ = "0.1.0"
