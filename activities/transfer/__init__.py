"""Moving objects between environments: copy, verify, archive and their compensations.

Today objects move whole and are verified by BLAKE3; the FastCDC delta engine (issue 3) replaces
the copy step behind the same activity interface.
"""
