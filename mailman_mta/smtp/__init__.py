"""The SMTP layer: what goes over one connection to the relay.

- `replies`: replies read within a time and size budget;
- `transaction`: one mail transaction (MAIL, RCPT..., DATA), pipelined or
  in lock-step, and its per-recipient result;
- `esmtp`: the ESMTP parameters a message needs from the server's offer;
- `tls`: TLS contexts built from the ``[mta]`` settings;
- `foreign`: a transaction through a plugin's transport that has only
  smtplib's ``sendmail``;
- `transport`: the connection itself (socket, EHLO, STARTTLS, AUTH), and
  the helpers everyone else uses to look at a transport.

Above it, `mailman_mta.connection` decides when to open, reuse and replace
a connection; below it is the socket.  Each module kept its old name
(``mailman_mta.transport`` and so on) as an alias of the module here.
"""
