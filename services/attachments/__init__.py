"""Image input (docs/images.md): pictures users attach to their messages, checked, cleaned,
stored beside the message store and sent to the model.

``images`` decodes, scales down and re-encodes an image without its metadata (Pillow, on a
bounded thread pool); ``service.Attachments`` takes images in from every transport, stores
them through the ``AttachmentStore`` (``services.store``), reads them back for their owner
only, and gives the turn pipeline the images its prompt carries.

May import: ``core``, ``store``.
"""
