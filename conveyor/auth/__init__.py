"""Who is calling: Supabase tokens and JWKS, service and exchange tokens, tenancy and admin roles,
rate limits."""
