"""
Who may read what: client authentication (L{artifactvault.auth.checkers},
built on C{twisted.cred}), the files it reads (L{artifactvault.auth.files}),
the per-backend access rules (L{artifactvault.auth.access}) and the HTTP
side that asks for and checks credentials (L{artifactvault.auth.gate}).
"""
