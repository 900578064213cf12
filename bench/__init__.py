"""`make bench`: the slash-command ack path of opsloop against a minimal Bolt app and bare aiohttp.

See bench/README.md for the method and how to read the numbers. Entry point: `python -m bench`.
"""
