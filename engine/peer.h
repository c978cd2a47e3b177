// Who is asking: the credentials of a session's client (the daemon reads them from the socket,
// daemon/peer.h).  Namespace rules and arena mapping are decided on them.
#pragma once

#include <sys/types.h>

#include <string>
#include <vector>

namespace kvtier {

struct PeerInfo {
  pid_t pid = 0;
  uid_t uid = 0;
  gid_t gid = 0;
  std::vector<gid_t> groups;  // supplementary groups, when the kernel reports them
  std::string comm;           // /proc/<pid>/comm, best effort
};

}  // namespace kvtier
