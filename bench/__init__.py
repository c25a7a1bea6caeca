"""Side-by-side benchmark of pullcache against CNCF Distribution's proxy mode (`make bench`)."""
