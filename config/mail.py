"""The demo's mailer: Django's console backend, printing each email as a person reads it.

Django's own console backend prints the encoded message, where a line longer than 76
characters (a password-reset link) is cut with quoted-printable ``=`` breaks and cannot be
opened as printed. This one prints the headers a reader needs and the text as written.
"""

from django.core.mail.backends import console


class EmailBackend(console.EmailBackend):
    def write_message(self, message):
        headers = {
            "From": message.from_email,
            "To": ", ".join(message.to),
            "Cc": ", ".join(message.cc),
            "Subject": message.subject,
        }
        lines = [f"{name}: {value}" for name, value in headers.items() if value]
        alternatives = [alt.mimetype for alt in getattr(message, "alternatives", [])]
        if alternatives:
            lines.append(f"(also sent as {', '.join(alternatives)})")
        self.stream.write("\n".join(lines) + "\n\n" + message.body.rstrip("\n") + "\n")
        self.stream.write("-" * 79 + "\n")
