"""Ticketmatic's eventstream: item formats, signing, the poller and its command."""
