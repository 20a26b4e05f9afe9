#include "dp_wg_messages.h"
_Static_assert(sizeof(struct dp_wg_initiation) == DP_WG_INITIATION_LEN, "initiation size");
_Static_assert(sizeof(struct dp_wg_response) == DP_WG_RESPONSE_LEN, "response size");
_Static_assert(sizeof(struct dp_wg_cookie_reply) == DP_WG_COOKIE_REPLY_LEN, "cookie reply size");
_Static_assert(sizeof(struct dp_wg_data_header) == DP_WG_DATA_HEADER_LEN, "data header size");
