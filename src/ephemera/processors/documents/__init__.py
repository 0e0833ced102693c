"""The document processors of the bill-of-lading workflow (the ``documents`` extra).

``pdf-form-fill`` fills an AcroForm template from the rows of a CSV, ``pdf-extract`` reads
text, words and tables out of PDFs, and ``bol-reconcile`` checks extracted bills of lading
against a CSV of expected shipments. Every document and CSV is hostile until read: each is
read as a stream under the limits of :mod:`.limits`, and what
breaks one fails the task with a message that says what and where, leaving no output behind.
"""
