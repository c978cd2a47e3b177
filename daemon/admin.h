// Admin and stats requests: one table maps each command to its handler and access rule.
#pragma once

#include <string>

#include <nlohmann/json.hpp>

#include "common/protocol_generated.h"
#include "daemon/peer.h"

namespace kvtier {

class Server;
struct Reply;

void handle_admin(Server& server, const PeerInfo& peer, const wire::RequestMsg& msg, Reply& r);
bool is_admin(const Server& server, const PeerInfo& peer);
// Every JSON document the daemon sends or logs: never throws, whatever bytes a name holds
// (invalid UTF-8, e.g. a disk entry written before names were checked, or a client's comm,
// comes out as U+FFFD).
std::string json_text(const nlohmann::json& j);

}  // namespace kvtier
