"""The sandbox's fixed, public credentials (they protect nothing; they make clients authenticate)."""

FINICITY_APP_KEY = "sandbox-finicity-app-key-0001"
FINICITY_PARTNER_ID = "1234583871234"
FINICITY_PARTNER_SECRET = "sandbox-partner-secret"
MX_CLIENT_ID = "sandbox-mx-client-id"
MX_API_KEY = "sandbox-mx-api-key"
