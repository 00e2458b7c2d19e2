"""Ticketure's Push API: audit record formats, the receiver and its command."""
