"""Client authentication and rate limits at the router.

* :mod:`.keystore`: where keys come from (the keys file, the admin API's
  keys in Redis, ``INFERGATE_API_KEYS``) and the lookup by digest.
* :mod:`.limiter`: requests, tokens and in-flight limits kept in Redis, one
  script per admission, so they hold across every router process and pod.
* :mod:`.guard`: the Flask side: who is calling, what they may reach, the
  ``x-ratelimit-*`` headers, settling tokens after the response.
"""
