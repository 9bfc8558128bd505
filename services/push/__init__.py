"""Push notifications through Firebase Cloud Messaging (docs/push.md): a finished turn that
no client heard is sent, after a grace period, to the user's registered devices.

``notifier`` decides and queues (off the turn path), ``fcm`` is our FCM HTTP v1 client,
``claims`` what replicas share so that one of them sends each push, at most once
(``services/redis/push.py`` with Redis, in-process without).

May import: ``core``, ``store``, ``templates``, ``conversation``.
"""
